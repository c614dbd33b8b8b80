"""The worker daemon and the build pipeline shared with `buildworker run`."""
