"""payments: charges, refunds, a ledger, a simulated provider (``python -m services.payments``)."""

from services.payments.app import create_app
from services.payments.config import Config

__all__ = ["Config", "create_app"]
