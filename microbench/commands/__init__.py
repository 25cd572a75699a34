"""One module per subcommand group; microbench.cli.COMMANDS lists them."""
