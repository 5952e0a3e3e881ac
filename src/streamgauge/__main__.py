from streamgauge.cli import main

main()
