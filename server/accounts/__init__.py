"""Who is asking: customer, partner and admin accounts (argon2 passwords, TOTP two-factor,
the encrypted session cookie), partner API keys with scopes and IP allow-lists, and the
customer's encrypted profile. `users.require_role` / `require_admin` guard handlers;
`api.py`, `profile_api.py` serve sign-up, log-in, MFA and the profile."""
