"""`reconciler run`: the polling loop, its HTTP server, registry events and notifications."""
