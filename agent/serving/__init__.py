"""The model server process (`python -m mldeck.agent.serving`): KServe v2 over HTTP, batching, hot swap.

It may import torch; the agent daemon never imports this package (it supervises the process).
"""
