"""Small widgets, each named after what it shows."""
