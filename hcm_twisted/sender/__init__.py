"""hcm_twisted.sender"""
