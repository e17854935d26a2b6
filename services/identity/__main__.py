from services.identity.app import main

main()
