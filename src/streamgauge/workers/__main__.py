from streamgauge.workers.process import main

main()
