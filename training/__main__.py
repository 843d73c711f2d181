from training.entry import main

main()
