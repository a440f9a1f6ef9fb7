"""The podstream relay: single poller of each RunPod job, journal on disk, websocket fan-out."""
