from vmkit.scheduler.daemon import main

main()
