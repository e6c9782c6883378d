from distillrec.cli import main

main()
