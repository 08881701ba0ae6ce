"""Job outputs: captured logs and artifacts, and the uploads of /output."""
