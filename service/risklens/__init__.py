"""risklens: explanations for fraud and risk models that reviewers, auditors and compliance can trust."""

__version__ = "0.2.0"
