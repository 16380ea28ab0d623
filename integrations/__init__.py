"""Ways into mldeck from the tools people already use, each behind an optional extra.

`mldeck.integrations.lightning` (`MLDeckLogger`, `mldeck[lightning]`) and
`mldeck.integrations.transformers` (`MLDeckCallback`, `mldeck[transformers]`) record a framework's
params, metrics and checkpoints through the SDK (`mldeck.init`); `mldeck.integrations.mlflow`
(`mldeck[mlflow]`) turns an MLflow store's history into run folders for `mldeck import mlflow`. The agent
imports none of them, and each imports its framework only when it is itself imported.
"""
