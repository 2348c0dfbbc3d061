"""Sinks: write audit rows to BigQuery and ClickHouse; refused rows become dead letters."""
