"""Third-party Sparkplug B edge nodes, driven by the tests: pysparkplug and Eclipse Tahu's JS."""
