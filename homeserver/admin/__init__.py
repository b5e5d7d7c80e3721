"""Server administration: what the admin API (`/_synapse/admin`) and the
`homeserver users` command do, with the rules they share written once."""
