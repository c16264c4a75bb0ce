"""What `api/` and `flows/` share: settings, the error catalogue, job records, object stores."""
