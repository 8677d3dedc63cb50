"""The POS gateway: what POS systems send (canonical JSON, ARTS POSLog, Shopify and Square webhooks),
one adapter module per format, checked and published once each to sw.pos.v1 (routes.py)."""
