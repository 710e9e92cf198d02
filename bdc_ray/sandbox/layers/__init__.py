"""The sandbox's isolation layers, one module each, applied in a fixed order (the order of
`protocol.LAYERS`):

at the template's start             in every run (a child cloned into new PID/mount/IPC namespaces)
  userns   (not root)                 fsview.enter_run   private /tmp and /dev/shm, own /proc
  netns                               rlimits.apply
  fsview.private + pidns.enter        creds.apply        uid of the slot, or no capabilities
  fsview.build_root (pivot_root)      seccomp.install
                                      audit.install      (defence in depth only)

Each start-time layer returns a `protocol.Layer` saying whether it is in force; the
supervisor refuses to run when a required one is not (see Sandbox, `Limits.allow_missing`).
A run-time layer that fails ends the run with `Exit.SETUP_FAILED` before any program code.
"""
