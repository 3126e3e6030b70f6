"""Layer 1, core: errors, settings, results and their facts, file I/O, progress, the platform
fingerprint, ``py:`` specs, and the one energy abstraction (``energy``).  Imports no other bench
package; every module but ``energy`` runs without torch (``bench check`` and ``bench table`` stay light)."""
