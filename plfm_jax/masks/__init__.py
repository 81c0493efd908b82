"""Cloud, haze and shadow masks: found in the series (`detect`), or read from the files users have."""
