"""hcm_twisted.agent"""
