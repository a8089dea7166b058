"""runwarden: a Celery worker service that keeps operation runs truthful."""
