"""Real servers for the tests: Redis and SeaweedFS (S3). Filled in by the backends work."""
