"""The `segment-klaviyo` command line: one module per subcommand."""
