"""The I/O shell: WebSocket server, HTTP routes, ticker, metrics. Moves bytes; decides little."""
