from services.keys.app import main

main()
