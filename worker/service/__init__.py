"""``runwarden up``: the supervision of the processes the service is made of (the embedded
Redis, a prefork worker with embedded beat), apart from the contract's modules."""

from worker.service.up import Service, run_up

__all__ = ["Service", "run_up"]
