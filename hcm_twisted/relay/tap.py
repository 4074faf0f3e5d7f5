from twisted.python import usage
class Options(usage.Options):
    optParameters = [["config", "c", None, "config"]]
def makeService(config):
    from twisted.application.service import MultiService
    return MultiService()
