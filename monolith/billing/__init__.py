"""The billing module: plans, subscriptions, invoices, payments. See README.md."""
