"""The lifecycle domain: policy, freshness, reasons, legitimacy gate, transitions and the
reconciler. Imports SQLAlchemy and models, never Celery."""
