"""Every SQL statement of the product. Functions take a connection; callers own transactions."""
