"""The app side: local ports forwarded through hybrid connections (``twistd hcm-sender``)."""
