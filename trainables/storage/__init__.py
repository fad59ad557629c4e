"""Object storage (s3://, gs://) as the search and the trials use it."""
