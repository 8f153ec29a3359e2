"""The filtering proxy: the sandbox's only way to the network.

``ProxyServer`` (server.py) serves HTTP (http.py) and SOCKS5 (socks.py) from
a thread of its own; decision.py is the pure policy core, resolver.py the
name lookup it is given, and listen.py binds Unix sockets for a proxy that
serves a socket directory.
"""
