"""Telling customers: e-mails (confirmation, cancellation, reminders) rendered from
`templates/` and sent over SMTP from the outbox (`notifications.py`, `mailer.py`)."""
