"""The aiohttp tier: REST for customers and partners, the live seat map over WebSockets."""
