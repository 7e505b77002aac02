from mcp_pki.cli import main

main()
