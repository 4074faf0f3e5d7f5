"""Bad input and security (issue 7): config fuzzing (``HCM_FUZZ_EXAMPLES``,
``HCM_FUZZ_RANDOM``), raw-socket abuse of the relay and the admin API, rights, tokens, the one
endpoint, TLS failures, secrets in logs and status, file modes."""
