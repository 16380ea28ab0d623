"""The version of mldeck, where both the package and the agent read it (without importing the SDK)."""

VERSION = "0.1.0"
