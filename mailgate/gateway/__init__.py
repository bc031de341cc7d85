"""The gateway process: HTTP and SMTP front doors around one relay core."""
