import gc

gc.disable()  # the app's imports: many objects, no garbage (a tenth of their time)
from streamgauge.workers.process import main  # noqa: E402

gc.enable()
main()
