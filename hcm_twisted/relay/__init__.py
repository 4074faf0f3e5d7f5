"""hcm_twisted.relay"""
