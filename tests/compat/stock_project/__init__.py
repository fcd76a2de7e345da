"""A minimal Django project of ours that hosts the STOCK FMA service apps for compat tests.

It runs only inside the stock virtualenv made by ``tests/compat/setup_stock_env.sh``; the
main test interpreter drives it through ``tests/compat/stock_server.py``.
"""
