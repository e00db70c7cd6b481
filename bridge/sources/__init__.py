"""Source plugins. The bundled ones (http, github, feed) are registered through the
`bridge.sources` entry point group exactly like third-party ones; base.py is the plugin API."""
