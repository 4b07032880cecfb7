"""Business logic over the repositories.

Services never commit: their caller owns the transaction.
"""
