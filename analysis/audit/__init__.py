"""The audit trail: every computed result with what produced it, its HTML report and ZIP export, and the password hashes of the simple login."""
