"""The demo training project `mldeck demo` runs: a small MLP on a data set that ships with scikit-learn."""
