"""mmserve on Ray Serve: engine replicas multiplexed by model behind one HTTP ingress.

Imported only by `main.py --cluster` and `serve run deploy/ray/config.yaml`; the
single server never imports it, so it runs without Ray installed.
"""
