"""Theatre partners: the REST show feed (`feed_api.py`), the web portal's onboarding and
keys (`portal_api.py`), sales reports and the analytics export (`reports*.py`,
`analytics.py`), and signed webhooks with retries and SSRF checks (`webhooks*.py`,
`ssrf.py`)."""
