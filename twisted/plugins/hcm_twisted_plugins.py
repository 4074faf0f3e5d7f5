"""twistd plugins: ``hcm`` (agent), ``hcm-relay`` (local relay), ``hcm-sender`` (app side)."""

from twisted.application.service import ServiceMaker

hcm = ServiceMaker("hcm", "hcm_twisted.agent.tap", "Hybrid Connection Manager agent", "hcm")
hcmRelay = ServiceMaker(
    "hcm-relay", "hcm_twisted.relay.tap", "Local Azure Relay Hybrid Connections stand-in", "hcm-relay"
)
hcmSender = ServiceMaker(
    "hcm-sender", "hcm_twisted.sender.tap", "App side: local ports through a hybrid connection", "hcm-sender"
)
